print("lazy-pages")
