etcdctl --endpoints=http://127.0.0.1:22379 put foo bar4 --prev-kv -w json
exit: 0
