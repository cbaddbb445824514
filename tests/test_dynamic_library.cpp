// core/dynamic_library.h, which opens the GPU libraries at their first use, on a library every
// Linux machine has (the C maths library), so that its paths run without a GPU too.
#include <gtest/gtest.h>

#include <string>

#include "core/dynamic_library.h"

using namespace mamba2;

TEST(DynamicLibrary, OpensTheFirstCandidateTheLoaderFindsAndBindsItsFunctions) {
  std::string why = "left from before";
  void* libm = open_library({"libmamba2-no-such-library.so.1", "libm.so.6"}, why);
  ASSERT_NE(libm, nullptr) << why;
  EXPECT_EQ(why, "");
  double (*cosine)(double) = nullptr;
  ASSERT_TRUE(bind_symbol(libm, cosine, "cos"));
  EXPECT_EQ(cosine(0.0), 1.0);
  EXPECT_FALSE(bind_symbol(libm, cosine, "mamba2_no_such_function"));
  EXPECT_EQ(cosine, nullptr);
}

TEST(DynamicLibrary, SaysWhatTheLoaderSaidOfEveryCandidateWhenNoneOpens) {
  std::string why;
  EXPECT_EQ(open_library({"libmamba2-no-such-library.so.1", "/nonexistent-dir/libmamba2-missing.so"}, why), nullptr);
  EXPECT_NE(why.find("libmamba2-no-such-library.so.1"), std::string::npos) << why;
  EXPECT_NE(why.find("; /nonexistent-dir/libmamba2-missing.so"), std::string::npos) << why;
  EXPECT_NE(why.find("No such file"), std::string::npos) << why;
}
