etcdctl --endpoints=http://127.0.0.1:22379 endpoint status -w json
exit: 0
