"""The web boundary: the Connexion app, its security functions, middleware and validators, and
the one table that turns domain errors into the contract's statuses and error codes."""
