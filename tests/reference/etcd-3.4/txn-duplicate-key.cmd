etcdctl --endpoints=http://127.0.0.1:22379 txn
exit: 1
stdin:

put t/dup 1
put t/dup 2


