# The real module (../module.nix) through nixpkgs' lib.evalModules, with stub
# declarations of the NixOS options it sets (no nixpkgs here: only its lib).
#   nix-instantiate --eval --strict --json nix/tests/module-eval.nix --arg nixpkgsLib /path/to/nixpkgs.lib
# (.ci/nix-checks.sh runs it when NIXPKGS_LIB is set.) `problems` must be
# empty; `rendered` shows the units each seed example gets.
{ nixpkgsLib }:
let
  lib = import (nixpkgsLib + "/lib");
  core = import ../core.nix;
  examples = import ./examples.nix;
  inherit (lib) mkOption types;

  # Packages stand in as derivations with a store path and nothing behind it.
  fake = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };
  pkgs =
    lib.genAttrs [
      "zfs-snap"
      "borgbackup"
      "borgmatic"
      "systemd"
      "coreutils"
      "zfs"
    ] fake
    // {
      # The module builds its package with callPackage, against the
      # host's boot.zfs.package: the stand-in checks it is given that.
      callPackage =
        f: args:
        assert baseNameOf f == "package.nix";
        assert args.zfs == pkgs.zfs;
        fake "zfs-snap";
    };

  # systemd's unit option type, as nixpkgs (nixos/lib/systemd-unit-options.nix)
  # merges it: lists concatenate, other values must agree.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (def: lib.isList def.value) defs' then
        lib.concatMap (def: lib.toList def.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };
  unit = types.submodule {
    options = {
      serviceConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      unitConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      environment = mkOption {
        type = types.attrsOf (types.nullOr types.str);
        default = { };
      };
      path = mkOption {
        type = types.listOf types.package;
        default = [ ];
      };
      wantedBy = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
    };
  };
  free = types.submodule { freeformType = types.attrsOf types.anything; };

  stubs =
    { config, ... }:
    {
      options = {
        assertions = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        warnings = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        environment.systemPackages = mkOption {
          type = types.listOf types.package;
          default = [ ];
        };
        boot.zfs.package = mkOption {
          type = types.package;
          default = pkgs.zfs;
        };
        systemd.services = mkOption {
          type = types.attrsOf unit;
          default = { };
        };
        services.borgmatic = {
          enable = mkOption {
            type = types.bool;
            default = false;
          };
          # As nixpkgs declares it: free-form, but a repository has only
          # `path` and `label` (NixOS/nixpkgs#483610).
          settings = mkOption {
            type = types.nullOr (
              types.submodule {
                freeformType = free;
                options.repositories = mkOption {
                  type = types.listOf (
                    types.submodule {
                      options = {
                        path = mkOption { type = types.str; };
                        label = mkOption { type = types.str; };
                      };
                    }
                  );
                  default = [ ];
                };
              }
            );
            default = null;
          };
          configurations = mkOption {
            type = types.attrsOf free;
            default = { };
          };
        };
        services.prometheus = {
          enable = mkOption {
            type = types.bool;
            default = false;
          };
          scrapeConfigs = mkOption {
            type = types.listOf types.anything;
            default = [ ];
          };
          ruleFiles = mkOption {
            type = types.listOf types.path;
            default = [ ];
          };
        };
        services.grafana = {
          enable = mkOption {
            type = types.bool;
            default = false;
          };
          provision = mkOption {
            type = free;
            default = { };
          };
        };
      };
      # What nixpkgs' services.borgmatic sets on the unit when a database dump
      # runs through sudo (nixos/modules/services/backup/borgmatic.nix): a
      # string CapabilityBoundingSet, which ours must add to, not clash with.
      config.systemd.services.borgmatic.serviceConfig =
        let
          s = config.services.borgmatic.settings;
          sudo =
            s != null
            && lib.any (d: d ? username && !(d ? password) && !(d ? pg_dump_command)) (
              s.postgresql_databases or [ ]
            );
        in
        lib.mkIf (config.services.borgmatic.enable && sudo) {
          NoNewPrivileges = false;
          CapabilityBoundingSet = "CAP_DAC_READ_SEARCH CAP_NET_RAW CAP_SETUID CAP_SETGID";
        };
    };

  evalFull =
    cfg: extra:
    lib.evalModules {
      modules = [
        stubs
        ../module.nix
        { _module.args.pkgs = pkgs; }
        { services.zfs-snap.borgmatic = cfg; }
        extra
      ];
    };
  eval = cfg: extra: (evalFull cfg extra).config;

  # The option documentation renders: every option has a description (the
  # seed's `mkEnableOption { description = ...; }` had none that rendered).
  docs = lib.optionAttrSetToDocList (evalFull examples.zfs { }).options.services.zfs-snap.borgmatic;
  undocumented = map (o: o.name) (lib.filter (o: !(lib.isString (o.description or null)) || o.description == "") docs);

  # Store paths of the stand-in packages back to the guest's paths, as in
  # the repository's unit files.
  toGuest = lib.replaceStrings [
    "${pkgs.zfs-snap}/bin/zfs-snap"
    "${pkgs.borgmatic}/bin/borgmatic"
    "${pkgs.systemd}/bin/systemd-inhibit"
  ] [ core.guestPaths.zfsSnap core.guestPaths.borgmatic core.guestPaths.systemdInhibit ];
  guestSection = s: lib.mapAttrs (_: map toGuest) (core.normalise s);

  shippedDropIn = (core.parseUnit (builtins.readFile ../../systemd/borgmatic.service.d/zfs-snap.conf)).Service;
  shippedExporter = core.parseUnit (builtins.readFile ../../systemd/zfs-snap-exporter.service);
  sudoLines = {
    NoNewPrivileges = [ "false" ];
    CapabilityBoundingSet = [ "CAP_DAC_READ_SEARCH CAP_NET_RAW CAP_SETUID CAP_SETGID" ];
  };

  failedOf = c: map (a: a.message) (lib.filter (a: !a.assertion) c.assertions);
  expect = what: ok: lib.optional (!ok) what;

  # Every seed example, and the PostgreSQL one with ZFS (sudo's lines and ours together).
  cases = removeAttrs examples [ "refused" ] // {
    postgresqlZfs = examples.postgresql // {
      zfs.enable = true;
    };
  };
  withServices = {
    services.prometheus.enable = true;
    services.grafana.enable = true;
  };

  checkCase =
    name: cfg:
    let
      c = eval cfg withServices;
      z = cfg.zfs.enable or false;
      bm = c.systemd.services.borgmatic or null;
      sudo = (cfg.postgresqlDatabases or [ ]) != [ ];
      expectedCaps =
        (if sudo then sudoLines.CapabilityBoundingSet else [ ])
        ++ (if z then shippedDropIn.CapabilityBoundingSet else [ ]);
      expectedService =
        (if z then shippedDropIn else { })
        // (if sudo then sudoLines else { })
        // lib.optionalAttrs (expectedCaps != [ ]) { CapabilityBoundingSet = expectedCaps; };
      exporterOn = cfg.prometheusExporter.enable or false;
      ex = c.systemd.services.zfs-snap-exporter;
      exporterAsFile = {
        Unit = guestSection ex.unitConfig;
        Service = guestSection ex.serviceConfig;
        Install.WantedBy = ex.wantedBy;
      };
    in
    {
      rendered =
        {
          "/etc/borgmatic/config.yaml" = c.services.borgmatic.settings;
        }
        // lib.optionalAttrs (bm != null) {
          "borgmatic.service.d/overrides.conf" =
            "[Service]\n"
            + lib.concatMapStrings (n: "Environment=\"${n}=${bm.environment.${n}}\"\n") (
              lib.attrNames bm.environment
            )
            + core.renderSection bm.serviceConfig;
        }
        // lib.optionalAttrs (c.systemd.services ? zfs-snap-tag) {
          "zfs-snap-tag.service" = core.render {
            Unit = c.systemd.services.zfs-snap-tag.unitConfig;
            Service = c.systemd.services.zfs-snap-tag.serviceConfig;
            Install.WantedBy = c.systemd.services.zfs-snap-tag.wantedBy;
          };
        }
        // lib.optionalAttrs exporterOn {
          "zfs-snap-exporter.service (store paths as the guest's)" = core.render exporterAsFile;
          "prometheus" = {
            inherit (c.services.prometheus) scrapeConfigs;
            ruleFiles = map toString c.services.prometheus.ruleFiles;
          };
          "grafana provision" = c.services.grafana.provision;
        };
      problems =
        map (m: "${name}: assertion: ${m}") (failedOf c)
        ++ expect "${name}: borgmatic on" c.services.borgmatic.enable
        ++ expect "${name}: the borgmatic unit's lines (got ${builtins.toJSON (if bm == null then null else guestSection bm.serviceConfig)})" (
          (if bm == null then { } else guestSection bm.serviceConfig) == expectedService
        )
        ++ expect "${name}: CapabilityBoundingSet adds to nixpkgs'" (
          (if bm == null then [ ] else lib.toList (bm.serviceConfig.CapabilityBoundingSet or [ ])) == expectedCaps
        )
        ++ expect "${name}: local_path is the link only with zfs.enable" (
          (c.services.borgmatic.settings.local_path or null)
          == (if z then "${pkgs.zfs-snap}/lib/zfs-snap/borg" else null)
        )
        ++ expect "${name}: zfs and the real borg reach the unit" (
          !z
          || (
            lib.elem pkgs.zfs bm.path && bm.environment.ZFS_SNAP_BORG == "${pkgs.borgbackup}/bin/borg"
          )
        )
        ++ expect "${name}: the exporter unit is systemd/zfs-snap-exporter.service" (
          !exporterOn || exporterAsFile == shippedExporter
        )
        ++ expect "${name}: the scrape job and the rules" (
          !exporterOn
          || (
            c.services.prometheus.scrapeConfigs == [ (core.scrapeConfig 9996) ]
            && map baseNameOf c.services.prometheus.ruleFiles == [ "zfs-snap.rules.yml" ]
          )
        )
        ++ expect "${name}: the tagging unit runs before borgmatic" (
          (cfg.zfs.datasets or [ ]) == [ ]
          || (
            c.systemd.services.zfs-snap-tag.serviceConfig.ExecStart
            == "${pkgs.zfs-snap}/bin/zfs-snap tag ${lib.concatStringsSep " " cfg.zfs.datasets}"
            && c.systemd.services.zfs-snap-tag.unitConfig.Before == "borgmatic.service"
            && lib.elem "borgmatic.service" c.systemd.services.zfs-snap-tag.wantedBy
          )
        );
    };
  checked = lib.mapAttrs checkCase cases;

  # The refused examples: each assertion fires with its message.
  refused = lib.mapAttrs (
    name: r:
    let
      failed = failedOf (eval r.cfg { });
    in
    {
      inherit failed;
      ok = lib.any (lib.hasInfix r.says) failed;
    }
  ) (removeAttrs examples.refused [ "unknownMode" ]);
  # A mode borg does not have is refused by the option's type already.
  unknownModeRefused =
    let
      mode = (eval examples.refused.unknownMode.cfg { }).services.zfs-snap.borgmatic.encryption.mode;
      good = (eval examples.basic { }).services.zfs-snap.borgmatic.encryption.mode;
    in
    # The same read succeeds for a mode borg has: the failure is the type's.
    !(builtins.tryEval (builtins.deepSeq mode true)).success
    && (builtins.tryEval (builtins.deepSeq good true)).success;
  # The user's own services.borgmatic.settings.zfs, not only extraConfig's.
  hookViaSettings = failedOf (eval examples.zfs { services.borgmatic.settings.zfs = { }; });
  # A config of /etc/borgmatic.d would run in the session without the link.
  otherConfigurations = failedOf (eval examples.zfs { services.borgmatic.configurations.other = { }; });

  # Grafana on, no dashboard file: a warning, no provisioning.
  noDashboard = eval (examples.prometheus // { prometheusExporter.grafanaDashboard = null; prometheusExporter.enable = true; }) withServices;
  dashboardPresent = builtins.pathExists ../../monitoring/grafana/zfs-snap-borg.json;

  # The package: its source set resolves and the link and feature are there.
  package = import ../package.nix {
    inherit lib;
    rustPlatform.buildRustPackage = args: args;
    pkg-config = fake "pkg-config";
    zfs = fake "zfs";
  };
  flake = import ../../flake.nix;
  flakeOut = flake.outputs {
    self = flakeOut;
    nixpkgs.legacyPackages.x86_64-linux.callPackage = f: _: { calls = baseNameOf f; };
  };
in
{
  rendered = lib.mapAttrs (_: v: v.rendered) checked;
  inherit refused;
  dashboard = {
    present = dashboardPresent;
    provision = (eval examples.prometheus withServices).services.grafana.provision;
  };
  problems =
    lib.concatMap (v: v.problems) (lib.attrValues checked)
    ++ lib.concatLists (
      lib.mapAttrsToList (n: r: expect "refused ${n}: no assertion says `${examples.refused.${n}.says}`: ${builtins.toJSON r.failed}" r.ok) refused
    )
    ++ expect "unknownMode: the option type refuses it" unknownModeRefused
    ++ expect "options without a description: ${builtins.toJSON undocumented}" (
      undocumented == [ ] && builtins.length docs >= 30
    )
    ++ expect "services.borgmatic.configurations is refused" (
      lib.any (lib.hasInfix "services.borgmatic.configurations is set") otherConfigurations
    )
    ++ expect "services.borgmatic.settings.zfs is refused too" (
      lib.any (lib.hasInfix "borgmatic's own `zfs:` hook") hookViaSettings
    )
    ++ expect "grafana without a dashboard file: a warning and no provisioning" (
      lib.any (lib.hasInfix "no dashboard provisioned") noDashboard.warnings
      && noDashboard.services.grafana.provision == { }
    )
    ++ expect "grafana with the dashboard file: provisioned" (
      !dashboardPresent
      || (
        let
          p = (eval examples.prometheus withServices).services.grafana.provision;
        in
        p.enable && (lib.head p.dashboards.settings.providers).name == "zfs-snap"
      )
    )
    ++ expect "package: the libzetta feature, the borg link, the lock file" (
      package.buildFeatures == [ "hook-bin/libzetta" ]
      && lib.hasInfix "ln -s $out/bin/zfs-snap $out/lib/zfs-snap/borg" package.postInstall
      && builtins.pathExists package.cargoLock.lockFile
      && package.src.filter (toString ../../hook-bin/src/main.rs) "regular"
      && package.src.filter (toString ../../Cargo.lock) "regular"
      && !package.src.filter (toString ../../target) "directory"
      && package.src.filter (toString ../../README.md) "regular"
      && !package.src.filter (toString ../../docs) "directory"
    )
    ++ expect "flake: package, overlay, NixOS module" (
      flakeOut.packages.x86_64-linux.zfs-snap.calls == "package.nix"
      && builtins.isFunction flakeOut.nixosModules.default
      && (flakeOut.overlays.default { callPackage = f: _: baseNameOf f; } { }).zfs-snap == "package.nix"
    );
}
