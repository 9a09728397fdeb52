etcdctl --endpoints=http://127.0.0.1:22379 put newkey v1 --prev-kv
exit: 0
