etcdctl --endpoints=http://127.0.0.1:22379 get /k/ --prefix --limit=2 -w json
exit: 0
