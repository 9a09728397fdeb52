etcdctl --endpoints=http://127.0.0.1:22379 snapshot save snapshot.db
exit: 0
