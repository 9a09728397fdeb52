etcdctl --endpoints=http://127.0.0.1:22381 compaction 69
exit: 0
