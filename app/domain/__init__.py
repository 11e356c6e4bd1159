"""The domain: key material, tiers, keys, sessions, the rate-limit rule and their errors.

Nothing here knows HTTP, Connexion or a database driver: `app.web` turns these rules into
answers, and `app.store` keeps their records.
"""
