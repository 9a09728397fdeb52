etcdctl --endpoints=http://127.0.0.1:22379 txn
exit: 0
stdin:

put t/d 4
del t/x


