"""Scale-out serving (docs/cluster.md): which partitions this node hosts, the cluster map
nodes announce on Kafka, and readiness that follows the changelog."""
