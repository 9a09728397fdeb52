# oxetcd rpm %preun: on erase ($1 = 0) stops and disables the service; upgrades leave it running.
if [ "$1" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload disable --now oxetcd-backup.timer oxetcd.service >/dev/null 2>&1 || :
fi
exit 0
