
#
vitserving_defaultþÿÿÿÿÿÿÿÿ'
string_inputÿÿÿÿÿÿÿÿÿBaGk=