etcdctl --endpoints=http://127.0.0.1:22381 get small --keys-only
exit: 0
