print("lazy-pagesd")
