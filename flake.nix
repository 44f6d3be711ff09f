{
  description = "ticket-token-rotator: regenerate ticket tokens in batches, resumably";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in {
      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          packages = [
            pkgs.nodejs_20
            pkgs.python3 # node-gyp, for better-sqlite3
            pkgs.gnumake
            pkgs.gcc
            pkgs.mariadb # client and a local server for the integration tests
            pkgs.redis
            pkgs.openssl # the TLS test's throwaway CA
            pkgs.util-linux # script: the pseudo-terminal tests
            pkgs.procps # pgrep
            pkgs.time # GNU time: peak RSS in the bench
            pkgs.docker-compose
          ];
          shellHook = ''
            echo "node $(node --version); run: npm ci && npm test"
          '';
        };
      });
    };
}
