"""convfocus.grading"""
