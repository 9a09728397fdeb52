etcdctl --endpoints=http://127.0.0.1:22381 txn
exit: 1
stdin:

put t1 x


