etcdctl --endpoints=http://127.0.0.1:22379 endpoint hashkv --rev=25
exit: 1
