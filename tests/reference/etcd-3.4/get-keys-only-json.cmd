etcdctl --endpoints=http://127.0.0.1:22379 get /k/ --prefix --keys-only -w json
exit: 0
