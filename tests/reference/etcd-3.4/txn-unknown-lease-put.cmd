etcdctl --endpoints=http://127.0.0.1:22379 txn
exit: 1
stdin:

put t/l v --lease=1234


