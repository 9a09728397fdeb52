etcdctl --endpoints=http://127.0.0.1:22381 endpoint status -w table
exit: 0
