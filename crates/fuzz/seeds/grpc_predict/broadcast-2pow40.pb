

vitserving_default#
string_input	€€€€€ BaGk=