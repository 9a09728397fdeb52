etcdctl --endpoints=http://127.0.0.1:22379 compaction 21
exit: 1
