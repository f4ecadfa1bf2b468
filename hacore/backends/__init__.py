"""What a backend is: the four family interfaces (consensus, replication, file sync,
services), the health-check interface, the records they exchange with the agent, and the
helpers backends share to run and bound their servers (processes, log files).

Imports nothing of hacore but :mod:`hacore.errors`, :mod:`hacore.pki` and the configuration's
leaf types, so a plugin can depend on it without pulling in the agent.
"""
