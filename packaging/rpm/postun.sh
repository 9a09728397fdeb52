# oxetcd rpm %postun: reloads systemd; after an upgrade ($1 >= 1) restarts a running service.
# Erase keeps /var/lib/oxetcd and /var/log/etcd.log (rpm has no purge; delete them by hand).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart oxetcd.service >/dev/null 2>&1 || :
    fi
fi
exit 0
