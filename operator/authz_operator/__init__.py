"""The Tollgate operator: reconciles ``AccessPolicy`` and ``IdentityProvider`` custom resources
(``tollgate.dev/v1alpha1``) into the data plane's configuration. Its decisions are pure functions
(:mod:`authz_operator.ownership`), tested without any API."""
