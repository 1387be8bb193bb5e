"""What each kopf handler does, with explicit arguments; :mod:`authz_operator.main` only wires them."""
