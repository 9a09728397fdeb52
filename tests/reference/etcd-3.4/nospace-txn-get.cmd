etcdctl --endpoints=http://127.0.0.1:22381 txn
exit: 0
stdin:

get small --keys-only


