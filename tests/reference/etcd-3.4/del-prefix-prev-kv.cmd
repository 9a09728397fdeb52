etcdctl --endpoints=http://127.0.0.1:22379 del /p/ --prefix --prev-kv
exit: 0
