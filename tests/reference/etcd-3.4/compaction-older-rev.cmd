etcdctl --endpoints=http://127.0.0.1:22379 compaction 20
exit: 1
