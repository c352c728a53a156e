# services.zfs-snap.borgmatic: the seed's services.clubcotton.borgmatic
# options (../../shared/seed/borgmatic-service.md), with zfs-snap taking the
# ZFS snapshots. Built on nixpkgs' services.borgmatic and borgmatic's
# upstream unit; what it generates is in ./core.nix (builtins only, checked
# by .ci/nix-checks.sh). Without flakes: imports = [ ./nix/module.nix ];
{
  config,
  lib,
  pkgs,
  ...
}:
let
  core = import ./core.nix;
  cfg = config.services.zfs-snap.borgmatic;
  d = core.defaults;
  inherit (lib) mkOption types;

  # The options as core.nix takes them (the seed's names).
  seed = removeAttrs cfg [
    "package"
    "borgPackage"
  ];
  zfsSnap = "${cfg.package}/bin/zfs-snap";
  link = "${cfg.package}/lib/zfs-snap/borg";
  settings = config.services.borgmatic.settings;

  dashboardFile = ../monitoring/grafana/zfs-snap-borg.json;
  dashboard = cfg.prometheusExporter.grafanaDashboard;
  # Grafana's file provider reads a directory: one holding only the dashboard.
  dashboardDir = builtins.path {
    name = "zfs-snap-grafana-dashboards";
    path = dirOf dashboard;
    filter = p: _: baseNameOf p == baseNameOf dashboard;
  };

  optionalStr =
    description:
    mkOption {
      type = types.nullOr types.str;
      default = null;
      inherit description;
    };
  listOfStr =
    description:
    mkOption {
      type = types.listOf types.str;
      default = [ ];
      inherit description;
    };
  keep =
    what: default:
    mkOption {
      type = types.ints.unsigned;
      inherit default;
      description = "${what} archives to keep (borgmatic's keep_${lib.toLower what}).";
    };
in
{
  options.services.zfs-snap.borgmatic = {
    enable = lib.mkEnableOption "borgmatic backups, with ZFS snapshots by zfs-snap (zfs.enable)";

    package = mkOption {
      type = types.package;
      # Built against the ZFS the host runs: libzfs_core must match the
      # kernel module (a host may pin boot.zfs.package = pkgs.zfs_unstable).
      default = pkgs.callPackage ./package.nix { zfs = config.boot.zfs.package; };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { zfs = config.boot.zfs.package; }";
      description = "zfs-snap, with its `borg` link at lib/zfs-snap/borg (borgmatic's local_path).";
    };
    borgPackage = mkOption {
      type = types.package;
      default = pkgs.borgbackup;
      defaultText = lib.literalExpression "pkgs.borgbackup";
      description = "The real borg (>= 1.4) that zfs-snap runs behind its link (ZFS_SNAP_BORG).";
    };

    sourceDirectories = listOfStr "Directories to back up.";
    repositories = mkOption {
      type = types.listOf (
        types.submodule {
          options = {
            path = mkOption {
              type = types.str;
              description = "The repository, as borg names it (ssh://user@host/./path, /mnt/backup).";
            };
            label = mkOption {
              type = types.str;
              description = "Its label (borgmatic --repository LABEL).";
            };
          };
        }
      );
      default = [ ];
      description = "Borg repositories to back up to, in order; one snapshot set for all of them.";
    };
    encryption = {
      mode = mkOption {
        type = types.enum core.encryptionModes;
        default = d.encryption.mode;
        description = "borg's encryption mode: what `borgmatic repo-create` creates each repository with (set on each repository in borgmatic's configuration).";
      };
      passphraseFile = mkOption {
        # A path literal (the seed's type) is taken as its string, never
        # interpolated: that would copy the secret into the store.
        type = types.nullOr (types.either types.path types.str);
        apply = v: if v == null then null else toString v;
        default = null;
        example = lib.literalExpression "config.age.secrets.borg-passphrase.path";
        description = "File holding the passphrase, outside the Nix store (encryption_passcommand reads it).";
      };
    };
    sshCommand = optionalStr "The ssh command borg uses (ssh_command).";
    remotePath = optionalStr "Path of borg on the remote host (remote_path).";
    retention = {
      keepDaily = keep "Daily" d.retention.keepDaily;
      keepWeekly = keep "Weekly" d.retention.keepWeekly;
      keepMonthly = keep "Monthly" d.retention.keepMonthly;
      keepYearly = keep "Yearly" d.retention.keepYearly;
    };
    compression = mkOption {
      type = types.str;
      default = d.compression;
      description = "borg's compression.";
    };
    excludePatterns = listOfStr "borg exclude patterns (exclude_patterns).";
    excludeCaches = mkOption {
      type = types.bool;
      default = d.excludeCaches;
      description = "Exclude directories tagged CACHEDIR.TAG.";
    };
    oneFileSystem = mkOption {
      type = types.bool;
      default = d.oneFileSystem;
      description = "Stay within one file system (datasets mounted below a source are then not snapshotted either).";
    };
    archiveNameFormat = mkOption {
      type = types.str;
      default = d.archiveNameFormat;
      description = "Archive name template.";
    };
    checks = mkOption {
      type = types.listOf (types.enum core.checkNames);
      default = d.checks;
      description = "borgmatic's consistency checks.";
    };
    checkLast = mkOption {
      type = types.ints.positive;
      default = d.checkLast;
      description = "Number of recent archives to check.";
    };
    beforeBackupHooks = listOfStr "Commands run before each create (borgmatic's `before: action`, `when: [create]`).";
    afterBackupHooks = listOfStr "Commands run after each create (`after: action`, `when: [create]`).";
    onErrorHooks = listOfStr "Commands run when an action fails (`after: error`).";
    postgresqlDatabases = mkOption {
      type = types.listOf (types.attrsOf types.anything);
      default = [ ];
      example = [
        {
          name = "all";
          username = "postgres";
        }
      ];
      description = "borgmatic's postgresql_databases; nixpkgs' borgmatic module adds the pg_dump commands.";
    };
    extraConfig = mkOption {
      type = types.attrsOf types.anything;
      default = { };
      description = "More borgmatic settings, over the generated ones (not `zfs`: zfs-snap takes the snapshots).";
    };
    verbosity = mkOption {
      type = types.ints.between (-2) 2;
      default = d.verbosity;
      description = "borgmatic's console verbosity when run by hand; the unit logs to the journal at --syslog-verbosity 1, as upstream's unit does.";
    };
    zfs = {
      enable = mkOption {
        type = types.bool;
        default = d.zfs.enable;
        description = "Back up ZFS datasets from one atomic snapshot set per run, taken by zfs-snap (`zfs-snap session` around borgmatic; local_path is zfs-snap's borg link).";
      };
      datasets = listOfStr "Datasets to back up whole (tagged org.torsion.borgmatic:backup=auto by `zfs-snap tag` before the backup). Removing one here does not untag it: `zfs-snap untag`.";
      zfsCommand = optionalStr "The zfs command zfs-snap runs (ZFS_SNAP_ZFS_COMMAND); default: zfs of boot.zfs.package.";
      mountCommand = optionalStr "Mount snapshots with this command instead of mount(2) (ZFS_SNAP_MOUNT_COMMAND).";
      umountCommand = optionalStr "Unmount with this command instead of umount2(2) (ZFS_SNAP_UMOUNT_COMMAND).";
    };
    prometheusExporter = {
      enable = lib.mkEnableOption "zfs-snap's Prometheus exporter (zfs-snap-exporter.service), with the scrape job and alert rules when services.prometheus is on, and the dashboard when services.grafana is on";
      port = mkOption {
        type = types.port;
        default = d.prometheusExporter.port;
        description = "Port on 127.0.0.1 the exporter listens on.";
      };
      grafanaDashboard = mkOption {
        type = types.nullOr types.path;
        default = if builtins.pathExists dashboardFile then dashboardFile else null;
        defaultText = lib.literalExpression "../monitoring/grafana/zfs-snap-borg.json (null if this checkout has none)";
        description = "The dashboard provisioned into Grafana when services.grafana is on; null for none.";
      };
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = core.assertions { cfg = seed; inherit settings; } ++ [
          {
            # The upstream unit's borgmatic reads /etc/borgmatic.d/*.yaml too:
            # such a config would run inside the session with the real borg
            # (no snapshots) and a zfs: hook in it would go unchecked.
            assertion = config.services.borgmatic.configurations == { };
            message = "services.zfs-snap.borgmatic: services.borgmatic.configurations is set; its configs would run in zfs-snap's session without its borg link (read live, unchecked). Put everything in services.zfs-snap.borgmatic (extraConfig) instead.";
          }
        ];
        warnings =
          core.warnings { cfg = seed; inherit settings; }
          ++ lib.optional (
            cfg.prometheusExporter.enable && config.services.grafana.enable && dashboard == null
          ) "services.zfs-snap.borgmatic: services.grafana is on but this checkout has no monitoring/grafana/zfs-snap-borg.json: no dashboard provisioned (set prometheusExporter.grafanaDashboard).";

        services.borgmatic = {
          enable = true;
          settings = core.settings {
            cfg = seed;
            link = if cfg.zfs.enable then link else null;
            cat = "${pkgs.coreutils}/bin/cat";
          };
        };
        environment.systemPackages = [ cfg.borgPackage ] ++ lib.optional cfg.zfs.enable cfg.package;
      }

      (lib.mkIf cfg.zfs.enable {
        # Upstream's unit (from pkgs.borgmatic, as services.borgmatic installs
        # it), overridden as systemd/borgmatic.service.d/zfs-snap.conf does.
        systemd.services.borgmatic = {
          # `nixos-rebuild switch` must not stop a backup under way (and
          # with it the session's teardown) because the unit changed.
          restartIfChanged = false;
          path = [ config.boot.zfs.package ];
          environment = core.zfsSnapEnvironment {
            cfg = seed;
            borg = "${cfg.borgPackage}/bin/borg";
          };
          serviceConfig = core.borgmaticDropIn {
            inherit zfsSnap;
            borgmatic = "${pkgs.borgmatic}/bin/borgmatic";
            systemdInhibit = "${pkgs.systemd}/bin/systemd-inhibit";
          };
        };
      })

      (lib.mkIf (cfg.zfs.enable && cfg.zfs.datasets != [ ]) {
        systemd.services.zfs-snap-tag =
          let
            u = core.tagUnit {
              inherit zfsSnap;
              inherit (cfg.zfs) datasets;
            };
          in
          {
            unitConfig = u.Unit;
            serviceConfig = u.Service;
            wantedBy = lib.splitString " " u.Install.WantedBy;
            path = [ config.boot.zfs.package ];
            environment = core.zfsSnapEnvironment {
              cfg = seed;
              borg = null;
            };
          };
      })

      (lib.mkIf cfg.prometheusExporter.enable {
        systemd.services.zfs-snap-exporter =
          let
            u = core.exporterUnit {
              inherit zfsSnap;
              inherit (cfg.prometheusExporter) port;
            };
          in
          {
            unitConfig = u.Unit;
            serviceConfig = u.Service;
            wantedBy = [ u.Install.WantedBy ];
          };

        services.prometheus = lib.mkIf config.services.prometheus.enable {
          scrapeConfigs = [ (core.scrapeConfig cfg.prometheusExporter.port) ];
          ruleFiles = [ ../monitoring/zfs-snap.rules.yml ];
        };

        services.grafana.provision = lib.mkIf (config.services.grafana.enable && dashboard != null) {
          enable = true;
          dashboards.settings.providers = [
            {
              name = "zfs-snap";
              folder = "Backups";
              type = "file";
              options.path = dashboardDir;
            }
          ];
        };
      })
    ]
  );
}
