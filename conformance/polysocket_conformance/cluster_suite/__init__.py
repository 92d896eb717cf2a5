"""The cluster suite: one set of tests for every backplane, with no code of its own per broker.

It starts a private broker from ``--polysocket-broker-command`` on a free port, three
``polysocket serve --backplane URL`` processes (``--polysocket-backplane``, ``{port}`` standing
for the broker's port), and raw WebSocket clients on each::

    pytest --pyargs polysocket_conformance.cluster_suite \\
        --polysocket-backplane='redis://127.0.0.1:{port}/0' \\
        --polysocket-broker-command="redis-server --port {port} --save '' --appendonly no"

    pytest --pyargs polysocket_conformance.cluster_suite \\
        --polysocket-backplane='nats://127.0.0.1:{port}' \\
        --polysocket-broker-command='nats-server -a 127.0.0.1 -p {port}'

What it checks (the README's "Clusters" section): a broadcast reaches every session on every
node exactly once and in publish order; ``getSessions`` lists every session with its node;
``sendTo`` reaches a session on another node; a node killed with SIGKILL leaves the presence
view within the expiry; a broker killed and restarted mid-traffic crashes nothing, local
delivery goes on, remote delivery and presence come back, and each node logs the outage once.
"""
