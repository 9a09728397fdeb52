etcdctl --endpoints=http://127.0.0.1:22379 compaction 25 --physical
exit: 0
