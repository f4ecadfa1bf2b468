"""A node's configuration: reading ``node.yaml``, ``--options`` overrides, the checks and
hints shared by every section, and the logging section.

A leaf layer: it imports no other part of hacore but :mod:`hacore.errors`. Backend names are
checked against whatever registry the caller passes (:mod:`hacore.plugins.configured` passes
the loaded plugins'), so the configuration does not know about plugins.
"""
