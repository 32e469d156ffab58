"""Side-by-side benchmark of layerstream against its anchors.

Kept free of heavy imports: ``generate_worker`` runs under other virtual
environments, and the command line loads torch only for the stages it runs.
"""
