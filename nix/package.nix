# zfs-snap, built from this repository's Cargo.lock with the libzetta backend
# (snapshot, hold, release, destroy through libzfs_core), and its `borg` link
# at lib/zfs-snap/borg (borgmatic's local_path). callPackage it from nixpkgs:
# the flake's packages.x86_64-linux.zfs-snap and the overlay do.
{
  lib,
  rustPlatform,
  pkg-config,
  zfs,
  withLibzetta ? true,
}:
let
  workspace = (builtins.fromTOML (builtins.readFile ../Cargo.toml)).workspace;
  members = workspace.members;
in
rustPlatform.buildRustPackage {
  pname = "zfs-snap";
  inherit (workspace.package) version;

  # The whole workspace (Cargo.toml names every member) and the README its
  # tests read, nothing else.
  src = lib.cleanSourceWith {
    name = "zfs-snap-source";
    src = ../.;
    filter =
      path: _:
      let
        rel = lib.removePrefix (toString ../. + "/") (toString path);
        top = builtins.head (lib.splitString "/" rel);
      in
      lib.elem rel [
        "Cargo.toml"
        "Cargo.lock"
        # The library's tests check the README's metric table against the code.
        "README.md"
      ]
      || lib.elem top members;
  };
  cargoLock.lockFile = ../Cargo.lock;

  cargoBuildFlags = [
    "-p"
    "hook-bin"
  ];
  buildFeatures = lib.optional withLibzetta "hook-bin/libzetta";
  # libzetta's sys crates find libzfs_core and libnvpair through pkg-config.
  nativeBuildInputs = lib.optional withLibzetta pkg-config;
  buildInputs = lib.optional withLibzetta zfs;

  # The library's unit tests (pure logic and the lifecycle over in-memory
  # doubles); everything else needs borg, ZFS or root (.ci/run runs it).
  cargoTestFlags = [
    "-p"
    "zfs-snap"
    "--lib"
  ];
  checkFeatures = [ ];

  postInstall = ''
    mkdir -p $out/lib/zfs-snap
    ln -s $out/bin/zfs-snap $out/lib/zfs-snap/borg
  '';

  meta = {
    description = "Consistent borg backups of ZFS hosts: borg reads one atomic snapshot set";
    license = with lib.licenses; [
      mit
      asl20
    ];
    platforms = lib.platforms.linux;
    mainProgram = "zfs-snap";
  };
}
