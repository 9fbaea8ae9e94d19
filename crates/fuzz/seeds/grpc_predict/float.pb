

vitserving_default
xlabel