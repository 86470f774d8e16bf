/// What `--version` / `-V` prints: the project has no release numbers; this names the CRIU whose command line and
/// protocols the drop-ins follow.
public let lazyPagesVersion = "lazy-pages (drop-in for CRIU 4.2's lazy-pages and page-server)"
