"""The droplet twin: droplet-like hosts (systemd, sshd, cloud-init, the Docker Engine) on which
the program's remote commands run over SSH as `pulumi up` and `pulumi destroy` run them."""
