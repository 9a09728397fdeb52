etcdctl --endpoints=http://127.0.0.1:22379 put dashkey -- -dash
exit: 0
