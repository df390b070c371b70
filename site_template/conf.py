"""Nikola configuration of the bundled blog (the default content a fresh host publishes).

Kept short on purpose: everything not set here is Nikola's default. The build must work
offline, so nothing here loads from a CDN.
"""

BLOG_AUTHOR = "Pequod Blogger"
BLOG_TITLE = "A Pequod Blog"
SITE_URL = "http://localhost/"
BLOG_EMAIL = "blogger@example.org"
BLOG_DESCRIPTION = "A blog published from git by pequod."
DEFAULT_LANG = "en"
TRANSLATIONS = {DEFAULT_LANG: ""}
TIMEZONE = "UTC"

THEME = "bootblog4"
USE_CDN = False

POSTS = (
    ("posts/*.rst", "posts", "post.tmpl"),
    ("posts/*.md", "posts", "post.tmpl"),
)
PAGES = (
    ("pages/*.rst", "", "page.tmpl"),
    ("pages/*.md", "", "page.tmpl"),
)
COMPILERS = {
    "rest": (".rst", ".txt"),
    "markdown": (".md", ".markdown"),
}

NAVIGATION_LINKS = {
    DEFAULT_LANG: (
        ("/archive.html", "Archive"),
        ("/categories/", "Tags"),
        ("/about/", "About"),
        ("/rss.xml", "RSS feed"),
    ),
}

CONTENT_FOOTER = "Contents &copy; {date} {author} - Powered by Nikola and pequod"
CONTENT_FOOTER_FORMATS = {
    DEFAULT_LANG: ((), {"email": BLOG_EMAIL, "author": BLOG_AUTHOR, "date": 2026, "license": ""}),
}

# Nikola's sitemap records file modification times, which makes two builds of the same
# commit differ; the pipeline relies on reproducible output, so it is left out.
DISABLED_PLUGINS = ["sitemap", "robots"]

# Drafts (`.. status: draft`) stay out until this is True; posts dated in the future wait for their date.
DEPLOY_DRAFTS = False
COPY_SOURCES = False
SHOW_SOURCELINK = False
