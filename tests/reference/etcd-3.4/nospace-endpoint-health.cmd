etcdctl --endpoints=http://127.0.0.1:22381 endpoint health
exit: 0
