"""Who is calling: one module per way of proving it (jwt, mtls, apikey), all returning :class:`model.Identity`."""
