etcdctl --endpoints=http://127.0.0.1:22379 get /k/a -w protobuf
exit: 0
