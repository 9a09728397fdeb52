etcdctl --endpoints=http://127.0.0.1:22381 txn
exit: 1
stdin:

put t1 1
put t2 2
put t3 3
put t4 4
put t5 5


