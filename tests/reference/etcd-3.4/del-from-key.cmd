etcdctl --endpoints=http://127.0.0.1:22379 del zz/ --from-key
exit: 0
