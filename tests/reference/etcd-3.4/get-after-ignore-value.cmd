etcdctl --endpoints=http://127.0.0.1:22379 get lkey -w json
exit: 0
