# Pure helpers of the msp-agent NixOS module: unit-name globs turned into
# regular expressions, and the polkit rule built from them. No option here, no
# pkgs: tests/nix/check.sh evaluates these with nothing but nixpkgs' lib.
{ lib }:

let
  # Characters a unit name may contain (systemd.unit(5)), plus the glob
  # metacharacters the agent's patterns use. Anything else is refused with a
  # message rather than escaped, so the polkit rule never needs to quote it.
  allowedChars = lib.stringToCharacters (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" + ":_.@-\\" + "*?[]!"
  );

  # Units a remediation pattern must never reach by accident: the agent itself
  # and what the host (and the agent's own permission check) depends on. An
  # explicit name is a deliberate choice and stays allowed, except the agent's
  # own unit, which systemd restarts on its own.
  protectedUnits = [
    "msp-agent.service"
    "dbus.service"
    "dbus-broker.service"
    "polkit.service"
    "systemd-journald.service"
    "systemd-logind.service"
    "sshd.service"
    "nix-daemon.service"
  ];
  # Printable ASCII from 0x20 on, in order: a character's index here plus 32
  # is its code, for the \xNN escapes of systemd-escape.
  printable = lib.stringToCharacters (
    " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~"
  );
  codeOf = lib.listToAttrs (lib.imap0 (i: c: lib.nameValuePair c (i + 32)) printable);
  hex2 = n: lib.toLower (lib.fixedWidthString 2 "0" (lib.toHexString n));

  # The units of the agent's durations (the humantime crate), in nanoseconds.
  durationUnits =
    let
      each = names: ns: lib.genAttrs names (_: ns);
      s = 1000000000;
    in
    each [ "nanos" "nsec" "ns" ] 1
    // each [ "usec" "us" ] 1000
    // each [ "millis" "msec" "ms" ] 1000000
    // each [ "seconds" "second" "secs" "sec" "s" ] s
    // each [ "minutes" "minute" "min" "mins" "m" ] (60 * s)
    // each [ "hours" "hour" "hr" "hrs" "h" ] (3600 * s)
    // each [ "days" "day" "d" ] (86400 * s)
    // each [ "weeks" "week" "w" ] (604800 * s)
    // each [ "months" "month" "M" ] (2630016 * s)
    // each [ "years" "year" "y" ] (31557600 * s);
in
rec {
  inherit protectedUnits;

  # The template of RB-DISK-001's privileged half, and one instance's name.
  freeDiskTemplate = "msp-agent-free-disk@";
  freeDiskUnit = mount: "${freeDiskTemplate}${escapePath mount}.service";

  # Characters of a mount point that escapePath cannot write (anything but
  # printable ASCII); the module refuses such a path with a message.
  unprintableChars =
    path: lib.unique (lib.filter (c: !(codeOf ? ${c})) (lib.stringToCharacters path));

  # `systemd-escape --path` of a normalised absolute path (no "//", no "." or
  # ".." component, no trailing "/"): "/" is "-", otherwise the leading and
  # trailing slashes go, each "/" becomes "-", and every character other than
  # [A-Za-z0-9:_.] (and a leading ".") becomes \xNN.
  escapePath =
    path:
    let
      inner = lib.removeSuffix "/" (lib.removePrefix "/" path);
      chars = lib.stringToCharacters inner;
      keep = c: builtins.match "[A-Za-z0-9:_.]" c != null;
      esc =
        c:
        if !(codeOf ? ${c}) then
          throw "msp-agent: cannot escape a character of the mount point \"${path}\" (only printable ASCII)"
        else
          "\\x${hex2 codeOf.${c}}";
      one =
        i: c:
        if c == "/" then
          "-"
        else if c == "." && i == 0 then
          esc c
        else if keep c then
          c
        else
          esc c;
    in
    if inner == "" then "-" else lib.concatStrings (lib.imap0 one chars);

  # A duration as the agent reads it ("10m", "1h 30m", "90s") in whole
  # seconds, rounded up.
  durationSeconds =
    text:
    let
      parts = lib.filter builtins.isList (builtins.split "([0-9]+) *([a-zA-Z]+)" text);
      ns =
        part:
        let
          unitName = lib.elemAt part 1;
        in
        if durationUnits ? ${unitName} then
          lib.toInt (lib.elemAt part 0) * durationUnits.${unitName}
        else
          throw "msp-agent: unknown unit \"${unitName}\" in the duration \"${text}\"";
      total = lib.foldl' (acc: p: acc + ns p) 0 parts;
    in
    if parts == [ ] then
      throw "msp-agent: \"${text}\" is not a duration"
    else
      (total + 999999999) / 1000000000;

  # Seconds as a systemd time span: whole minutes as "Nmin", else "Ns".
  systemdSpan =
    seconds: if lib.mod seconds 60 == 0 then "${toString (seconds / 60)}min" else "${toString seconds}s";

  isGlob = pattern: lib.any (c: lib.elem c [ "*" "?" "[" ]) (lib.stringToCharacters pattern);

  invalidChars =
    pattern: lib.unique (lib.filter (c: !(lib.elem c allowedChars)) (lib.stringToCharacters pattern));

  # The glob syntax of the agent's patterns (the `glob` crate): `*` any run of
  # characters, `?` one character, `[abc]`, `[a-z]`, `[!abc]`. Returns an
  # unanchored regular expression that means the same in POSIX ERE
  # (builtins.match, which always matches the whole string) and in JavaScript
  # (polkit), where the caller adds ^ and $.
  globToRegex =
    pattern:
    let
      literal = c: if c == "." || c == "\\" then "\\" + c else c;
      step =
        acc: c:
        if acc.inClass then
          if c == "]" && acc.first then
            # `[]...]` would mean different things in ERE and in JavaScript,
            # and no unit name contains `]`.
            throw "msp-agent: unit pattern \"${pattern}\" has an empty [] character class"
          else if c == "]" then
            acc
            // {
              out = acc.out + "]";
              inClass = false;
            }
          else if c == "!" && acc.first && !acc.negated then
            acc
            // {
              out = acc.out + "^";
              negated = true;
            }
          else
            acc
            // {
              out = acc.out + (if c == "\\" then "\\\\" else c);
              first = false;
            }
        else if c == "*" then
          acc // { out = acc.out + ".*"; }
        else if c == "?" then
          acc // { out = acc.out + "."; }
        else if c == "[" then
          acc
          // {
            out = acc.out + "[";
            inClass = true;
            first = true;
            negated = false;
          }
        else
          acc // { out = acc.out + literal c; };
      result = lib.foldl' step {
        out = "";
        inClass = false;
        first = false;
        negated = false;
      } (lib.stringToCharacters pattern);
    in
    if result.inClass then
      throw "msp-agent: unit pattern \"${pattern}\" opens a [ character class that is never closed"
    else
      result.out;

  globMatches = pattern: name: builtins.match (globToRegex pattern) name != null;

  # The protected units a pattern would reach; [] for an explicit name.
  protectedMatches =
    pattern: if isGlob pattern then lib.filter (globMatches pattern) protectedUnits else [ ];

  # A polkit rule (JavaScript, ES5: polkitd's interpreter is duktape or mozjs)
  # that lets `user` start and restart exactly the units named in `names` or
  # matched by `patterns`, and leaves every other request to the other rules,
  # which for an unprivileged user means "Interactive authentication required".
  polkitRule =
    {
      user,
      names,
      patterns,
      verbs ? [
        "start"
        "restart"
      ],
    }:
    let
      toJS = builtins.toJSON;
      regexps = map (p: "new RegExp(${toJS "^${globToRegex p}$"})") patterns;
    in
    ''
      // msp-agent: user ${user} may ${lib.concatStringsSep " or " verbs} only the units in its
      // configuration. Generated by the msp-agent NixOS module.
      polkit.addRule(function (action, subject) {
        if (action.id != "org.freedesktop.systemd1.manage-units" || subject.user != ${toJS user}) {
          return polkit.Result.NOT_HANDLED;
        }
        var verbs = ${toJS verbs};
        if (verbs.indexOf(action.lookup("verb")) < 0) {
          return polkit.Result.NOT_HANDLED;
        }
        var unit = action.lookup("unit");
        var names = ${toJS names};
        if (names.indexOf(unit) >= 0) {
          return polkit.Result.YES;
        }
        var patterns = [${lib.concatStringsSep ", " regexps}];
        for (var i = 0; i < patterns.length; i++) {
          if (patterns[i].test(unit)) {
            return polkit.Result.YES;
          }
        }
        return polkit.Result.NOT_HANDLED;
      });
    '';
}
