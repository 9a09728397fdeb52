etcdctl --endpoints=http://127.0.0.1:22381 alarm list
exit: 0
