"""What runs wherever the CLI runs, apart from any node: the CLI profile (which nodes, which
credentials), reaching the local agent before the node has credentials, following an
operation's progress, and the units people read. The node's own side is :mod:`hacore.cluster`.
"""
