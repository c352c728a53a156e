# The seed's README examples (../shared/seed/borgmatic-service.md), as the
# values a user writes under services.zfs-snap.borgmatic; the seed's
# `config.age.secrets.borg-passphrase.path` is agenix's path for it. Plain
# data: read by core-checks.nix (builtins only) and module-eval.nix (nixpkgs' lib).
let
  passphrase = "/run/agenix/borg-passphrase";
  encryption = {
    mode = "repokey-blake2";
    passphraseFile = passphrase;
  };
  retention = {
    keepDaily = 7;
    keepWeekly = 4;
    keepMonthly = 6;
    keepYearly = 1;
  };
  rsyncNet = [
    {
      path = "ssh://user@server.rsync.net/./backups";
      label = "rsync.net";
    }
  ];
in
rec {
  # "Basic Usage"
  basic = {
    enable = true;
    sourceDirectories = [
      "/var/lib"
      "/home"
      "/etc"
    ];
    repositories = [
      {
        path = "ssh://12345@ch-s011.rsync.net/./backups/my-hostname";
        label = "rsync.net";
      }
    ];
    inherit encryption retention;
    sshCommand = "ssh -i /root/.ssh/id_ed25519_rsyncnet";
    excludePatterns = [
      "*.pyc"
      "__pycache__"
      "/var/cache"
      "/var/tmp"
      "*/node_modules"
      "*/.cache"
    ];
  };

  # "PostgreSQL Database Backups"
  postgresql = {
    enable = true;
    sourceDirectories = [
      "/etc"
      "/var/lib/important"
    ];
    repositories = rsyncNet;
    inherit encryption;
    postgresqlDatabases = [
      {
        name = "all";
        username = "postgres";
      }
    ];
  };

  # "ZFS Snapshot Backups"
  zfs = {
    enable = true;
    sourceDirectories = [
      "/var/lib"
      "/home"
      "/mnt/photos"
    ];
    repositories = rsyncNet;
    inherit encryption retention;
    zfs.enable = true;
  };

  # "Advanced ZFS Configuration"
  zfsAdvanced = {
    enable = true;
    sourceDirectories = [
      "/var/lib"
      "/home"
    ];
    repositories = rsyncNet;
    inherit encryption;
    zfs = {
      enable = true;
      datasets = [
        "rpool/local/lib"
        "rpool/safe/home"
      ];
      zfsCommand = "/usr/local/bin/zfs";
      mountCommand = "/usr/local/bin/mount";
      umountCommand = "/usr/local/bin/umount";
    };
  };

  # "Hooks for Custom Actions" (over the ZFS example: "... other config ...")
  hooks = zfs // {
    beforeBackupHooks = [
      "echo 'Starting backup at $(date)'"
      "systemctl stop myservice"
    ];
    afterBackupHooks = [
      "systemctl start myservice"
      "echo 'Backup completed successfully at $(date)'"
    ];
    onErrorHooks = [ "echo 'Backup failed!' | mail -s 'Backup Error' admin@example.com" ];
  };

  # "Multiple Repositories"
  multipleRepositories = {
    enable = true;
    sourceDirectories = [
      "/var/lib"
      "/home"
    ];
    repositories = [
      {
        path = "ssh://user@server.rsync.net/./backups/primary";
        label = "rsync.net";
      }
      {
        path = "/mnt/external-drive/backups";
        label = "local";
      }
    ];
    inherit encryption;
    zfs.enable = true;
  };

  # "Custom Borgmatic Configuration" (over the ZFS example: "... basic config ...")
  extraConfig = zfs // {
    extraConfig = {
      healthchecks.ping_url = "https://hc-ping.com/your-uuid";
      patterns = [
        "R /var/lib"
        "+ /var/lib/important"
        "- /var/lib/cache"
      ];
      # The seed writes "0077": borgmatic 2.1.10 refuses a string here (its
      # `config validate`: "'0077' is not of type 'integer'"); it reads the
      # integer's digits as octal, so 77 is 0077.
      umask = 77;
    };
  };

  # "Monitoring with Prometheus" (over the ZFS example: "... rest of your
  # borgmatic config ..."; the exporter serves what zfs-snap recorded, so
  # it needs zfs.enable).
  prometheus = zfs // {
    prometheusExporter = {
      enable = true;
      port = 9996;
    };
  };

  # The VM suite's seed host (integration/tests/seedhost.rs): "Basic Usage"
  # with the guest's "rsync.net" (an sshd serving `borg serve` below
  # /./backups) and a local repository, the seed's PostgreSQL dump and ZFS.
  # Its borgmatic settings, with the guest's paths, are the committed
  # integration/tests/seedhost-config.json the guest's borgmatic runs with
  # (.ci/nix-checks.sh proves them equal).
  seedHost = basic // {
    repositories = [
      {
        path = "ssh://rsyncnet@localhost/./backups/seed";
        label = "rsync.net";
      }
      {
        path = "/srv/borg-local/seed";
        label = "local";
      }
    ];
    encryption = encryption // {
      passphraseFile = "/root/borg-passphrase";
    };
    postgresqlDatabases = [
      {
        name = "shop";
        username = "postgres";
      }
    ];
    zfs.enable = true;
  };

  # What the module must refuse: each with a piece of the message it must give.
  refused = {
    borgmaticZfsHook = {
      cfg = zfs // {
        extraConfig.zfs = { };
      };
      says = "borgmatic's own `zfs:` hook";
    };
    noRepository = {
      cfg = zfs // {
        repositories = [ ];
      };
      says = "`repositories` is empty";
    };
    passphraseInStore = {
      cfg = zfs // {
        encryption = encryption // {
          passphraseFile = "/nix/store/0000000000000000000000000000000-secret";
        };
      };
      says = "outside the Nix store";
    };
    passphraseWithoutEncryption = {
      cfg = zfs // {
        encryption = encryption // {
          mode = "none";
        };
      };
      says = "a repository without encryption has no passphrase";
    };
    unknownMode = {
      cfg = zfs // {
        encryption = encryption // {
          mode = "repokey-blake3";
        };
      };
      says = "is none of borg's modes";
    };
    exporterWithoutZfs = {
      cfg = basic // {
        prometheusExporter.enable = true;
      };
      says = "only with zfs.enable = true";
    };
    badDataset = {
      cfg = zfsAdvanced // {
        zfs = zfsAdvanced.zfs // {
          datasets = [ "rpool/safe/home; rm -rf /" ];
        };
      };
      says = "not ZFS dataset names";
    };
  };
}
