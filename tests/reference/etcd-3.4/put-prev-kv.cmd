etcdctl --endpoints=http://127.0.0.1:22379 put foo bar2 --prev-kv
exit: 0
